"""The competition's archive on disk: extracted safely, its files checked, then installed.

Every member is checked before anything is written (no links, absolute paths, '..', encrypted or
oversized members), the files are unpacked into a hidden folder inside the data folder, their
headers and row counts checked, and only then moved into place, train.csv last. Nothing reaches
the data folder unless every check has passed. `pipeline.kaggle.client` downloads the archive; this
module never talks to Kaggle.

    install_archive(Path("digit-recognizer.zip"), Path("data"))

Test hook: PIPELINE_KAGGLE_ROWS="TRAIN,TEST" replaces the expected 42,000 and 28,000 rows so the tests
can serve a small archive; the real-size check itself is tested without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pipeline.data.datafiles import DataFiles
from pipeline.data.load import TEST_COLUMNS, TRAIN_COLUMNS
from pipeline.data.submission import COLUMNS as SUBMISSION_COLUMNS
from pipeline.data.submission import KAGGLE_ROWS
from pipeline.errors import UserError

# File name -> header; rows come from expected_shapes().
HEADERS: dict[str, list[str]] = {
    DataFiles.SAMPLE_SUBMISSION: SUBMISSION_COLUMNS,
    DataFiles.TEST: TEST_COLUMNS,
    DataFiles.TRAIN: TRAIN_COLUMNS,  # last: the file users look for appears only when all are there
}
TRAIN_ROWS, TEST_ROWS = 42_000, KAGGLE_ROWS
ROWS_ENV = "PIPELINE_KAGGLE_ROWS"
# The real archive unpacks to ~123 MB; anything far beyond that is not the competition's data.
MAX_UNPACKED_BYTES = 512 * 2**20


# ---------------------------------------------------------------------------- shape checks


def expected_shapes() -> dict[str, tuple[int, int]]:
    """(rows, columns) each data file must have: the real competition's, unless the test hook is set."""
    train, test = TRAIN_ROWS, TEST_ROWS
    raw = os.environ.get(ROWS_ENV, "").strip()
    if raw:
        try:
            train, test = (int(part) for part in raw.split(","))
        except ValueError:
            raise UserError(f"{ROWS_ENV}={raw!r}: expected two row counts, e.g. 1257,540") from None
    return {DataFiles.SAMPLE_SUBMISSION: (test, len(SUBMISSION_COLUMNS)),
            DataFiles.TEST: (test, len(TEST_COLUMNS)), DataFiles.TRAIN: (train, len(TRAIN_COLUMNS))}


def _csv_shape(path: Path) -> tuple[list[str], int]:
    """Header fields and number of data rows, counted without parsing the cells (fast on 70 MB)."""
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
        rows, last = 0, b"\n"
        for block in iter(lambda: f.read(1 << 20), b""):
            rows += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        rows += 1  # last row without a trailing newline
    return (header.split(",") if header else []), rows


def check_files(folder: Path, shapes: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Problems with the competition files in `folder` (empty when all are present with the right shape)."""
    shapes = shapes or expected_shapes()
    problems = []
    for name, (rows, cols) in shapes.items():
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        header, n = _csv_shape(path)
        want = HEADERS[name]
        if len(header) != cols or n != rows:
            problems.append(f"{name} is {n:,} rows × {len(header):,} columns, expected {rows:,} × {cols:,}")
        elif header != want:
            bad = next(i for i, (a, b) in enumerate(zip(header, want)) if a != b)
            problems.append(f"{name} header column {bad + 1} is {header[bad]!r}, expected {want[bad]!r}")
    return problems


# ---------------------------------------------------------------------------- safe extraction


def _member_path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path if it is safe to write, None for a folder entry, else a UserError."""
    name = info.filename
    kind = stat.S_IFMT(info.external_attr >> 16)
    refuse = f"{archive}: refusing to extract member {name!r}"
    if kind == stat.S_IFLNK:
        raise UserError(f"{refuse}: it is a symbolic link; use the archive downloaded from Kaggle")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UserError(f"{refuse}: absolute path; use the archive downloaded from Kaggle")
    parts = PurePosixPath(norm).parts
    if ".." in parts:
        raise UserError(f"{refuse}: '..' would write outside the data folder; use the archive "
                        "downloaded from Kaggle")
    if info.is_dir():
        return None
    if kind not in (0, stat.S_IFREG):
        raise UserError(f"{refuse}: not a regular file; use the archive downloaded from Kaggle")
    if info.flag_bits & 0x1:
        raise UserError(f"{refuse}: it is encrypted; use the archive downloaded from Kaggle")
    return PurePosixPath(*parts)


def extract_archive(archive: Path, dest: Path, limit: int = MAX_UNPACKED_BYTES) -> list[str]:
    """Extract `archive` into the empty folder `dest` after checking every member; returns the paths."""
    archive = Path(archive)
    corrupt = f"{archive}: corrupt or incomplete zip archive"
    fix = "download it again (python -m pipeline download --force)"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _member_path(archive, info)) for info in zf.infolist()]
            files = [(info, rel) for info, rel in members if rel is not None]
            total = sum(info.file_size for info, _ in files)
            if total > limit:
                raise UserError(f"{archive}: would unpack to {total / 2**20:,.0f} MB, over the "
                                f"{limit / 2**20:,.0f} MB limit; this is not the competition's archive")
            written = 0
            for info, rel in files:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    # Count real bytes too: the sizes in the zip's directory are only claims.
                    for block in iter(lambda: src.read(1 << 20), b""):
                        written += len(block)
                        if written > limit:
                            raise UserError(f"{archive}: unpacks to more than {limit / 2**20:,.0f} MB; "
                                            "this is not the competition's archive")
                        out.write(block)
    except FileNotFoundError:
        raise UserError(f"{archive}: file not found; check the --from-zip path") from None
    except IsADirectoryError:
        raise UserError(f"{archive}: is a folder, expected the competition's .zip file") from None
    except zipfile.BadZipFile as exc:
        raise UserError(f"{corrupt} ({exc}); {fix}") from None
    except (zlib.error, EOFError, NotImplementedError) as exc:
        raise UserError(f"{corrupt} ({type(exc).__name__}: {exc}); {fix}") from None
    return [str(rel) for _, rel in files]


@contextlib.contextmanager
def staging(data_dir: Path) -> Iterator[Path]:
    """A hidden temp folder inside `data_dir` (same filesystem, so moves are atomic), always removed."""
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".kaggle-", dir=data_dir))
    except OSError as exc:
        raise UserError(f"{data_dir}: cannot create the data folder ({exc.strerror}); "
                        "check the path given to --data") from None
    ok = False
    try:
        yield tmp
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not ok:
            with contextlib.suppress(OSError):
                data_dir.rmdir()  # only if still empty: we leave no trace of a failed first download


def install_archive(archive: Path, data_dir: Path) -> list[str]:
    """Extract and check a competition archive, then move its files into `data_dir`; returns their names."""
    archive, data_dir = Path(archive), Path(data_dir)
    shapes = expected_shapes()
    with staging(data_dir) as tmp:
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        names = extract_archive(archive, unpacked)
        problems = check_files(unpacked, shapes)
        if problems:
            found = ", ".join(names) or "nothing"
            raise UserError(f"{archive}: not the digit-recognizer data: {'; '.join(problems)} "
                            f"(the archive holds {found}); nothing was written to {data_dir}")
        for name in shapes:  # train.csv last, see HEADERS
            os.replace(unpacked / name, data_dir / name)
    return list(shapes)
