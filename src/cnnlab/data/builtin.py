"""The built-in datasets (Fashion-MNIST, MNIST): where to find them and how to verify them.

Search order: --data-dir / $CNNLAB_DATA -> the Debian package's folder -> torchvision's download
into the user's cache (needs internet). Files are checked against the MD5 sums of the official
release's *uncompressed* IDX files: Debian re-gzips the files, so the published .gz sums differ
there while the content is byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import UserError, option

from .common import RawSplit, one_line, os_error
from .idx import idx_file, read_idx_split

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    class_names: tuple[str, ...]
    md5: dict[str, str]  # uncompressed IDX file -> MD5 of the official release
    debian_dir: str | None  # where the Debian package puts the files
    debian_package: str | None
    torchvision_class: str  # torchvision.datasets class used to download


BUILTIN = {
    "fashion-mnist": BuiltinDataset(
        name="fashion-mnist",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        md5={"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
             "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
             "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
             "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
        debian_dir="/usr/share/datasets/fashion-mnist",
        debian_package="dataset-fashion-mnist",
        torchvision_class="FashionMNIST",
    ),
    "mnist": BuiltinDataset(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        md5={"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
             "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
             "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
             "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
        debian_dir=None,
        debian_package=None,
        torchvision_class="MNIST",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnnlab"


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete_folder(folder: Path) -> bool:
    return all(_idx_path(folder, stem) for stem in IDX_FILES)


def candidate_folders(spec: BuiltinDataset, data_dir: str | Path | None) -> list[Path]:
    """Folders searched, in order."""
    folders: list[Path] = []
    for root in (data_dir, os.environ.get("CNNLAB_DATA")):
        if root:
            root = Path(root).expanduser()
            folders += [root / spec.name, root]
            break  # --data-dir wins over $CNNLAB_DATA
    if spec.debian_dir:
        folders.append(Path(spec.debian_dir))
    folders.append(cache_dir() / spec.torchvision_class / "raw")
    return folders


def _md5(path: Path) -> str:
    """MD5 of a file's content, of the uncompressed data for a gzip file, read in chunks."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            try:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
            except (EOFError, OSError, zlib.error) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise
                raise UserError(f"{path}: corrupt or truncated gzip file ({one_line(exc)}); download it again") from None
    except OSError as exc:
        raise os_error(path, exc) from None
    return digest.hexdigest()


def verify_md5(spec: BuiltinDataset, folder: Path) -> None:
    for stem in IDX_FILES:
        path = idx_file(folder, stem)  # refuses a raw and a .gz copy that differ
        digest = _md5(path)
        if digest != spec.md5[stem]:
            raise UserError(f"{path}: MD5 {digest} does not match the official {spec.name} release "
                            f"({spec.md5[stem]}); the file is corrupt or a different dataset, replace it")


def _download(spec: BuiltinDataset) -> Path | None:
    """Let torchvision download into our cache; None when offline."""
    import torchvision.datasets as tvd

    try:
        getattr(tvd, spec.torchvision_class)(str(cache_dir()), train=True, download=True)
    except Exception:  # no network, proxy, HTTP error: all mean "not available this way"
        return None
    folder = cache_dir() / spec.torchvision_class / "raw"
    return folder if _complete_folder(folder) else None


def locate(spec: BuiltinDataset, data_dir: str | Path | None = None, download: bool = True) -> Path:
    folders = candidate_folders(spec, data_dir)
    root = data_dir or os.environ.get("CNNLAB_DATA")  # the variable was silently passed over when it named nothing
    named = option("data_dir", data_dir) if data_dir else f"CNNLAB_DATA={root}"
    fix = "" if data_dir else "; point the variable at the folder that holds the IDX files, or unset it"
    if root and not Path(root).expanduser().exists():
        raise UserError(f"{named}: folder does not exist{fix}")
    if root and not Path(root).expanduser().is_dir():
        raise UserError(f"{named}: is a file, but a folder is expected; give the folder that holds the IDX files"
                        + (" (or unset the variable)" if fix else ""))
    for folder in folders:
        if folder.is_dir() and _complete_folder(folder):
            return folder
    if download:
        folder = _download(spec)
        if folder:
            return folder
    ways = []
    if spec.debian_package:
        ways.append(f"install it with 'sudo apt-get install {spec.debian_package}'")
    ways.append(f"put the four IDX files ({', '.join(IDX_FILES)}, .gz or not) in a folder and pass "
                f"{option('data_dir', metavar='FOLDER')} (or set CNNLAB_DATA)")
    ways.append("connect to the internet so torchvision can download it")
    raise UserError(f"dataset {spec.name} not found; looked in {', '.join(str(f) for f in folders)}; "
                    + "; or ".join(ways))


def load_builtin(name: str, data_dir: str | Path | None = None, verify: bool = True) -> tuple[RawSplit, RawSplit, Path]:
    spec = BUILTIN[name]
    folder = locate(spec, data_dir)
    if verify:
        verify_md5(spec, folder)
    train = read_idx_split(idx_file(folder, IDX_FILES[0]), idx_file(folder, IDX_FILES[1]))
    test = read_idx_split(idx_file(folder, IDX_FILES[2]), idx_file(folder, IDX_FILES[3]))
    return train, test, folder
