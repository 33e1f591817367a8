"""Every reader of the file formats users bring, gathered in one place: IDX (`idx`), NPZ/NPY
(`numpy_files`), Kaggle CSV (`csv_files`) and image folders (`image_folders`), with what they share
(`common`: RawSplit, validate_arrays, limits and one-line errors)."""

# ruff: noqa: F401
from .common import (DECODE_ERRORS, GZIP_MAGIC, MAX_LABEL, VALUE_LIMIT, RawSplit, check_claim, gunzip, gzip_check,
                     memory_bytes, one_line, os_error, validate_arrays)
from .csv_files import check_csv_header, read_csv
from .idx import IDX_IMAGE_MAGIC, IDX_LABEL_MAGIC, find_idx_pair, idx_file, read_idx, read_idx_folder, read_idx_split
from .image_folders import IMAGE_SUFFIXES, class_images, ignored_beside, image_folder_notes, list_dir, read_image_folder
from .numpy_files import check_npy_header, load_npy, read_npy, read_npz
