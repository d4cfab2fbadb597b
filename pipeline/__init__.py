"""digits: a Kaggle Digit Recognizer pipeline — data → k-fold Keras CNNs → fold ensemble → submission."""
