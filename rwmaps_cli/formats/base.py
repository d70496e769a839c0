"""What every file format shares: the records, the small interface, and safe writing.

A format is one :class:`FileFormat` object (see ``nifti.py``, ``sitk.py``, ``numpy.py``)
and the registry in ``__init__.py`` picks one by file name.  A format may read label
volumes, write and read maps, or both; nothing outside ``rwmaps_cli.formats`` looks at a
suffix or knows how a format lays out its axes.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rwmaps_cli.errors import InputError
from rwmaps_cli.contract import DEFAULT_LAYOUT, LAYOUTS, MAP_DTYPES  # the contract owns the layouts and dtypes; a file stores them

TMP_MARKER = ".rwmaps-tmp-"
# The deflate (zlib) level of .npz maps.  Measured on a (4, 200, 256, 256) float32 map
# (nested noisy ellipsoids, 210 MB raw; 2-core machine, numpy 2.4):
#   rrw map:      np.savez_compressed (level 6) 2.5 s / 19.6 MB, level 1 1.1 s / 22.9 MB
#   boundary map: np.savez_compressed (level 6) 8.0 s / 101.8 MB, level 1 4.2 s / 110 MB
# Level 1 costs 8-16 % more disk than level 6 and saves about half the write time; level 9
# buys < 1 % more.  .nii.gz maps are not zlib's: they go through ISA-L, at its own level
# and figures (formats/nifti.py, ISAL_LEVEL).
DEFAULT_COMPRESSLEVEL = 1


@dataclass(frozen=True, eq=False)  # eq=False: fields are arrays, element-wise == is ambiguous
class LabelVolume:
    """A label volume as read from disk.

    Attributes
    ----------
    array : (*spatial) ndarray, 2D or 3D
        The labels exactly as stored (bool, integer or float dtype; NIfTI scl_slope /
        scl_inter applied as nibabel does), in the reader's own axis order and memory
        order (nibabel: Fortran-ordered (X, Y, Z); SimpleITK: C-ordered (Z, Y, X)).
    spacing : tuple of float
        Voxel size per *array* axis, same order and length as ``array.shape``.
    affine : (4, 4) float64 ndarray
        Maps an index of ``array`` (i, j[, k], 1) to RAS+ world mm.  For a 2D array the
        third column is a unit z axis.
    nifti_header : nibabel header or None
        The input's NIfTI header, so a NIfTI map keeps its qform/sform and their codes.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    nifti_header: object | None = None


@dataclass(frozen=True)
class MapHeader:
    """What a map file says about itself, read from its header (no voxel data).

    :func:`rwmaps_cli.mapfile.map_info` fills in what a header cannot say (a bare
    ``.npy``'s layout, classes and kind) from the manifest; :class:`rwmaps_cli.MapMeta` is
    what ``load_map`` returns, with the manifest's context.

    Attributes
    ----------
    shape : tuple of int
        The map's logical shape: ``(C, *spatial)`` for a full map, ``(*spatial)`` for a
        compact one (a 2D NIfTI map's stored singleton axis removed).
    spatial_ndim : int or None
        2 or 3; None only when the file cannot tell (a bare ``.npy``: see
        :func:`rwmaps_cli.mapfile.map_info`, which settles it from the manifest).
    layout : {"full", "compact"} or None
    kind, dtype : str or None
    classes : list of int or None
        The label value of each channel (full) or the class list (compact), when stored.
    spacing : tuple of float or None
    affine : (4, 4) ndarray or None
    stored_shape : tuple of int
        The array exactly as stored (NIfTI: channels last).
    """

    shape: tuple[int, ...]
    spatial_ndim: int | None
    layout: str | None
    kind: str | None
    dtype: str
    stored_shape: tuple[int, ...]
    classes: list[int] | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...] | None:
        if self.spatial_ndim is None:
            return None
        return self.shape[len(self.shape) - self.spatial_ndim:]


@dataclass(frozen=True)
class MapContent:
    """What is written into a map file besides its array."""

    classes: np.ndarray  # (C,) int64: the label value of each channel, or the compact map's class list
    kind: str
    layout: str = DEFAULT_LAYOUT


class FileFormat:
    """One file format: override what it supports.

    Attributes
    ----------
    name : str
        Shown in messages (``"NIfTI"``, ``"NRRD"``...).
    suffixes : tuple of str
        Lower-case endings this format claims, longest first (``".nii.gz"``).
    output_name : str or None
        The ``--format`` value when the format writes maps (``"nii.gz"``), else None.
    reader_name : str or None
        The name a caller picks this reader by (``read_labels(path, reader=...)``), for
        files whose suffix another format owns (nnU-Net's ``.npy`` segs); else None.
    map_dtypes : tuple of numpy dtype
        The map dtypes it can store: :data:`rwmaps_cli.contract.MAP_DTYPES`, or fewer.
    can_mmap : bool
        Whether :meth:`load_map` can return a read-only memory map.
    """

    name = "?"
    suffixes: tuple[str, ...] = ()
    output_name: str | None = None
    reader_name: str | None = None
    map_dtypes: tuple[np.dtype, ...] = ()
    can_mmap = False  # load_map(mmap=True) returns a memory map
    compressed = False  # maps are written compressed (gzip, deflate)
    stores_classes = False  # a compact map file holds the class list (else only the manifest does)

    # ------------------------------------------------------------------ labels
    def read_labels(self, path: Path) -> LabelVolume:
        raise InputError(f"{self.name} files are not read as labels")

    def read_shape(self, path: Path) -> tuple[int, ...]:
        """Spatial shape of ``read_labels(path).array``, from the header only."""
        raise InputError(f"{self.name} files are not read as labels")

    def read_geometry(self, path: Path) -> tuple[tuple[float, ...], np.ndarray | None]:
        """(spacing, affine or None) of a label file, from the header only."""
        raise InputError(f"{self.name} files are not read as labels")

    # ------------------------------------------------------------------ maps
    def header_says_map(self, path: Path) -> bool | None:
        """True/False when the file itself tells whether it is a map; None when it cannot."""
        return False

    def write_map(self, tmp: Path, final: Path, data: np.ndarray, volume: LabelVolume, content: MapContent,
                  compresslevel: int | None, threads: int = 1) -> None:
        """Write ``data`` ((C, *spatial) full or (*spatial) compact) to ``tmp``."""
        raise ValueError(f"{self.name} cannot store maps")

    def read_map_header(self, path: Path) -> MapHeader:
        raise InputError(f"not a map format ({self.name})")

    def load_map(self, path: Path, mmap: bool = False) -> tuple[np.ndarray, MapHeader]:
        """The map array in its logical shape (see :class:`MapHeader`) and its info."""
        raise InputError(f"not a map format ({self.name})")


# --------------------------------------------------------------------------- checks shared by readers


def check_ndim(shape: Sequence[int]) -> None:
    if len(shape) not in (2, 3):
        raise InputError(f"{len(shape)}D label volume (shape {tuple(int(n) for n in shape)}); expected 2D or 3D")
    if 0 in shape:
        raise InputError(f"empty label volume (shape {tuple(int(n) for n in shape)})")


def check_labels(array: np.ndarray) -> np.ndarray:
    """Reject arrays that cannot be label volumes; return ``array`` unchanged."""
    # bool masks, integers and floats compare exactly with integer class values;
    # complex, object, string, datetime and structured (e.g. NIfTI RGB24) do not.
    if array.dtype.kind not in "biuf":
        raise InputError(f"unsupported label dtype {array.dtype}; expected integer or float labels")
    check_ndim(array.shape)
    return array


def check_map_array(shape: tuple[int, ...], dtype: np.dtype, layout: str | None) -> None:
    if dtype.kind != "f":  # reading is lenient about the float width; writing takes MAP_DTYPES only
        raise InputError(f"holds a {dtype} array; a map holds floats (rwmaps writes "
                         f"{' or '.join(map(str, MAP_DTYPES))})")
    allowed = {"full": (3, 4), "compact": (2, 3), None: (2, 3, 4)}[layout]
    if len(shape) not in allowed:
        raise InputError(f"holds an array of shape {shape}; a {layout or ''} map is "
                         + ("(*spatial)" if layout == "compact" else "(C, *spatial)") + " with 2D or 3D spatial axes")


def diagonal_affine(spacing: Sequence[float]) -> np.ndarray:
    """(4, 4) affine with ``spacing`` on the diagonal (1 for a missing third axis)."""
    diagonal = list(spacing) + [1.0] * (3 - len(spacing)) + [1.0]
    return np.diag(np.asarray(diagonal, dtype=np.float64))


# The schema of what rwmaps writes: the manifest and every map say which one they follow,
# so a reader knows what to expect of them.  1: rwmaps 0.1 (which wrote no schema); 2:
# rwmaps 0.2 (maps name their layout and rank; manifests have a journal and map fingerprints).
SCHEMA = 2


def newer_schema(schema) -> str | None:
    """Why a file (a map, a manifest) of ``schema`` cannot be read: the one refusal of a
    newer rwmaps' files, or None when this rwmaps reads it."""
    if isinstance(schema, int) and schema <= SCHEMA:
        return None
    return f"written by a newer rwmaps (schema {schema!r}; this one reads up to schema {SCHEMA}): upgrade rwmaps_cli"


def check_schema(schema: int) -> None:
    """InputError for a map of a schema newer than this rwmaps reads (:func:`newer_schema`)."""
    problem = newer_schema(schema)
    if problem:
        raise InputError(problem)


def describe_map(kind: str, layout: str, spatial_ndim: int) -> str:
    """The self-description a map file carries: ``"rwmaps rrw compact 3d schema 2"``."""
    return f"rwmaps {kind} {layout} {spatial_ndim}d schema {SCHEMA}"


class MapDescription(NamedTuple):
    """What a map file's self-description says (:func:`parse_description`).

    Attributes
    ----------
    says_map : bool
        The text starts with ``rwmaps``.
    kind, layout : str or None
        None when the text is not an rwmaps description (layout ``"full"`` when it is
        but names none: schema 1).
    spatial_ndim : int or None
        2 or 3; None when the text does not say (schema 1).
    schema : int
        The :data:`SCHEMA` the map follows (1 when it does not say).
    """

    says_map: bool
    kind: str | None
    layout: str | None
    spatial_ndim: int | None
    schema: int = 1


def parse_description(text: str) -> MapDescription:
    """What :func:`describe_map`'s text says: is it a map, its kind, layout, spatial rank.

    Schema 1 (rwmaps 0.1.x) wrote ``"rwmaps KIND"`` (full maps whose rank the manifest
    tells) and later ``"rwmaps KIND LAYOUT Nd"``; schema 2 adds ``"schema 2"``.
    """
    words = text.split()
    if not words or words[0] != "rwmaps":
        return MapDescription(False, None, None, None)
    kind = words[1] if len(words) > 1 else None
    schema = int(words[5]) if len(words) > 5 and words[4] == "schema" and words[5].isdigit() else 1
    layout = words[2] if len(words) > 2 and words[2] in LAYOUTS else DEFAULT_LAYOUT
    match = re.fullmatch(r"([23])d", words[3]) if len(words) > 3 else None
    return MapDescription(True, kind, layout, int(match.group(1)) if match else None, schema)


# --------------------------------------------------------------------------- errors


def one_line(text: str, path: Path, limit: int = 200) -> str:
    """Collapse ``text`` to one line without ``path`` in it (the caller prints the path)."""
    for form in (str(path.resolve()), str(path), path.name):
        text = text.replace(form, "<file>")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def library_detail(exc: BaseException) -> str:
    """'Type: message' of a library exception, without SimpleITK's source-location noise."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Exception thrown in SimpleITK"):
        lines = lines[1:]  # "Exception thrown in SimpleITK ImageFileReader_Execute: /src/...cxx:99:"
        teem = [line for line in lines if line.startswith("[nrrd]")]
        lines = teem[-1:] or lines  # NRRD's chain ends with the innermost cause
        lines = [line for line in lines if not line.startswith("Reason:")]  # MetaImageIO prints a stale errno
    text = " ".join(lines)
    text = re.sub(r"(?:sitk|itk|ITK)(?:::| )ERROR: (?:\w+\(0x[0-9a-fA-F]+\): )?", "", text)
    return f"{type(exc).__name__}: {text}" if text.strip() else type(exc).__name__


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, found without opening it (a FIFO would block
    the reader forever), or None.  A broken or looping link says so, and an empty file."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
        return "file not found"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop (the links point at each other)"
        return (error.strerror or str(error)).lower()
    if stat.S_ISDIR(found.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(found.st_mode):
        return "not a regular file (a FIFO, socket or device)"
    if found.st_size == 0:
        return "empty file (0 bytes)"
    return None


# A header's shape is a claim: rwmaps believes it only as far as the file's bytes can hold
# it, and checks before reading the voxels, so a lying header allocates nothing.  An
# uncompressed file holds its own bytes (after the header); a deflate stream (gzip, zlib,
# zip, PNG) inflates at most 1032:1 (the format's limit: 258 bytes per 2-bit code); TIFF's
# LZW at most about 2,560:1 (a 12-bit code stands for at most 3,838 bytes).
DEFLATE_INFLATION = 1032
LZW_INFLATION = 2560


def check_claim(shape: Sequence[int], itemsize: int, holds: int, claimed: int | None = None) -> None:
    """InputError when ``shape`` voxels of ``itemsize`` bytes (or ``claimed`` bytes, for a
    format that packs them) are more than ``holds`` bytes, what the file can hold (see
    :data:`DEFLATE_INFLATION`)."""
    claimed = math.prod(int(n) for n in shape) * itemsize if claimed is None else claimed
    if claimed > holds:
        shown = " × ".join(str(int(n)) for n in shape)
        raise InputError(f"the header claims {shown} voxels ({_bytes(claimed)}), more than the file can hold "
                         f"({_bytes(holds)}): truncated, or a header that lies")


def _bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


# --------------------------------------------------------------------------- what libraries say
#
# rwmaps' commands print one line per bad file, in their own words.  While one of them runs
# (:func:`capturing_library_output`, entered by the command line and by the worker side of a
# case), what the libraries say during a read is kept from the terminal: Python warnings,
# nibabel's log ("sizeof_hdr should be 348"), and what C code writes to file descriptor 2
# (ITK's MetaIO, libpng, libtiff).  A read that fails puts that text into its one line; a read
# that succeeds drops it.  Outside such a run (``load_map`` in a user's data loader) nothing
# is captured and no process-wide state is touched.

_CAPTURE = threading.local()  # .said: the messages of the read this thread is doing, or None


def _said() -> list[str] | None:
    return getattr(_CAPTURE, "said", None)


class _Collected(logging.Filter):
    """On nibabel's logger: a message goes to the capturing thread's read, else through."""

    def filter(self, record: logging.LogRecord) -> bool:
        said = _said()
        if said is None:
            return True
        said.append(record.getMessage())
        return False


class _StderrSink:
    """File descriptor 2 pointed at a temporary file while a capturing read runs (counted:
    threads that read at once share one redirection, which the last one restores)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readers = 0
        self.file = None
        self.saved = -1

    def enter(self) -> int:
        with self.lock:
            if self.readers == 0:
                if self.file is None:
                    self.file = tempfile.TemporaryFile()
                os.ftruncate(self.file.fileno(), 0)
                os.lseek(self.file.fileno(), 0, os.SEEK_SET)  # fd 2 will share this offset
                sys.stderr.flush()
                self.saved = os.dup(2)
                os.dup2(self.file.fileno(), 2)
            self.readers += 1
            return os.fstat(self.file.fileno()).st_size

    def leave(self, start: int) -> str:
        with self.lock:
            end = os.fstat(self.file.fileno()).st_size
            text = os.pread(self.file.fileno(), min(end - start, 65536), start) if end > start else b""
            self.readers -= 1
            if self.readers == 0:
                self._restore()
            return text.decode(errors="replace")

    def _restore(self) -> None:
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.saved = -1

    def after_fork(self) -> None:
        """In a child forked mid-read (another thread's): its own stderr back, a fresh lock."""
        self.lock = threading.Lock()
        if self.readers:
            self.readers = 0
            self._restore()


_SINK = _StderrSink()
_NIBABEL_FILTER = _Collected()


def _install() -> None:
    """nibabel's log filtered, warnings routed, the sink reset on fork: once per process
    (the warnings hook again if someone put theirs back, as ``catch_warnings`` does)."""
    logger = logging.getLogger("nibabel.global")
    if _NIBABEL_FILTER not in logger.filters:
        logger.addFilter(_NIBABEL_FILTER)
        os.register_at_fork(after_in_child=_SINK.after_fork)
    if getattr(warnings.showwarning, "routes_to_rwmaps", False):
        return
    shown = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        said = _said()
        if said is None:
            return shown(message, category, filename, lineno, file, line)
        said.append(str(message))

    showwarning.routes_to_rwmaps = True
    warnings.showwarning = showwarning


@contextmanager
def capturing_library_output() -> Iterator[None]:
    """While the body runs, this thread's file reads keep what the libraries say from the
    terminal (into a failed read's one line, or nowhere).  For rwmaps' own commands and
    workers, which own the terminal; a library user's process is left as it is."""
    _install()
    outer = _said()
    _CAPTURE.said = [] if outer is None else outer
    try:
        yield
    finally:
        _CAPTURE.said = outer


@contextmanager
def _read_messages(said: list[str]) -> Iterator[None]:
    """What the libraries say during the body, into ``said``, when this thread captures."""
    captured = _said()
    if captured is None:
        yield
        return
    first = len(captured)
    start = _SINK.enter()
    try:
        yield
    finally:
        text = _SINK.leave(start)
        said.extend(captured[first:])
        del captured[first:]
        said.extend(line.strip() for line in text.splitlines() if line.strip())


@contextmanager
def input_errors(path: Path, format_name: str) -> Iterator[None]:
    """Turn any failure to read ``path`` into a one-line InputError; what the libraries said
    meanwhile (when captured: :func:`capturing_library_output`) goes into that line."""
    said: list[str] = []
    try:
        with _read_messages(said):
            problem = file_problem(path)
            if problem is not None:
                raise InputError(problem)
            with open(path, "rb"):  # fail early with a plain cause: no permission
                pass
            yield
    except InputError:
        raise
    except MemoryError:  # not a property of the file: let the caller retry with fewer workers
        raise
    except FileNotFoundError as exc:
        raise InputError("file not found") from exc
    except PermissionError as exc:
        raise InputError("permission denied") from exc
    except IsADirectoryError as exc:
        raise InputError("is a directory, not a file") from exc
    except Exception as exc:  # nibabel, SimpleITK, numpy and zipfile raise many types
        detail = library_detail(exc)
        noted = "".join(f"; {text}" for text in dict.fromkeys(said) if text not in detail)
        cause = f"cannot read: file is truncated or not a valid {format_name} ({detail}{noted})"
        raise InputError(one_line(cause, path)) from exc


# --------------------------------------------------------------------------- atomic writing


_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:60] or "host"
# ".case.rwmaps-tmp-<host>-<pid>-<8 hex>.nii.gz"; schema 1 wrote no host.
_TMP_WRITER = re.compile(re.escape(TMP_MARKER) + r"(?:(?P<host>[A-Za-z0-9._]+)-)?(?P<pid>\d+)-[0-9a-f]{8}")


def temporary_name(path: Path, suffix: str) -> Path:
    """Hidden name beside ``path`` with TMP_MARKER, the writer's host and pid, and the real ``suffix``."""
    stem = path.name[: len(path.name) - len(suffix)][:100]  # stay far below 255-byte names
    return path.with_name(f".{stem}{TMP_MARKER}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def writer_is_gone(name: str, other_hosts_gone: bool = False) -> bool:
    """Whether the process that wrote temporary ``name`` has ended: its pid is dead on this
    host.  A writer on another host cannot be seen from here: it counts as alive unless
    ``other_hosts_gone``."""
    match = _TMP_WRITER.search(name)
    if match is None:
        return False
    if match.group("host") not in (None, _HOST):
        return other_hosts_gone
    try:
        os.kill(int(match.group("pid")), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Parent folders are created.  If the body (or the rename) raises, the temporary is
    removed and the exception propagates, so ``path`` is either the old file or the
    complete new one.  ``suffix`` (default: the last one of ``path``) is kept at the end
    of the temporary's name, so libraries that look at it write the right format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, path.suffix if suffix is None else suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a temporary behind
        tmp.unlink(missing_ok=True)
        raise


def clean_temporaries(root: str | os.PathLike, all_writers_gone: bool = False) -> int:
    """Delete the temporaries under ``root`` (recursively) whose writer has ended.

    They are left by a killed run.  A temporary whose pid is alive on this host is never
    removed; a writer on another host counts as alive unless ``all_writers_gone`` (the
    caller holds the folder's exclusive lock, so no rwmaps writes there anywhere).
    Returns how many files were removed.
    """
    removed = 0
    for folder, _, files in os.walk(root):  # does not follow symlinked folders
        for name in files:
            if TMP_MARKER in name and writer_is_gone(name, other_hosts_gone=all_writers_gone):
                try:
                    os.unlink(os.path.join(folder, name))
                except FileNotFoundError:  # already gone
                    continue
                removed += 1
    return removed
