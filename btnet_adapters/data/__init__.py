"""Training data for BTNet: face image sources, RecordIO without mxnet, degradations.

- Sources (:mod:`.sources`): :class:`ImageFolderSource` (``root/<identity>/<image>``),
  :class:`TSVSource` (``path<TAB>identity``), :class:`RecordIOSource` (insightface
  ``train.rec`` + ``train.idx``), :func:`open_source` to pick one from a path.
- Datasets (:mod:`.dataset`): :class:`FaceDataset` (trunk training, φ_hr / φ_mr / φ_mm) and
  :class:`PairedFaceDataset` (branch training: teacher 112 image + student ``r`` image).
- Settings recorded with every run: :class:`DegradationSpec`, :class:`ResolutionSampler`,
  :class:`CorruptPolicy`.
- RecordIO I/O (:mod:`.recordio`, :mod:`.pack`): :class:`IndexedRecordReader`,
  :class:`IndexedRecordWriter`, :func:`pack_recordio` (also ``python -m
  btnet_adapters.data.pack``).
- :func:`write_class_index` / :func:`read_class_index` keep a classifier's identity → label
  mapping; :func:`write_synthetic_folder` makes small synthetic datasets for tests and demos.
"""

from .class_index import read_class_index, write_class_index
from .corrupt import CorruptPolicy, CorruptTracker, find_corrupt
from .dataset import FACE_MEAN, FACE_STD, FaceDataset, PairedFaceDataset, normalize
from .decode import IMAGE_EXTENSIONS, decode_image
from .degrade import BRANCH_DEGRADATION, TRUNK_DEGRADATION, DegradationSpec
from .errors import CorruptImageError, DatasetError, MissingDataError, RecordIOError
from .multires import PRESETS, ResolutionSampler, sample_rng
from .pack import PackSummary, pack_recordio
from .recordio import (IndexedRecordReader, IndexedRecordWriter, IRHeader, pack_record,
                       unpack_record)
from .sources import (FaceSource, ImageFolderSource, RecordIOSource, TSVSource, UnlabeledFolderSource,
                      classes_path, open_source)
from .synthetic import synthetic_image, write_synthetic_folder

__all__ = [
    "BRANCH_DEGRADATION", "FACE_MEAN", "FACE_STD", "IMAGE_EXTENSIONS", "PRESETS",
    "TRUNK_DEGRADATION", "CorruptImageError", "CorruptPolicy", "CorruptTracker", "DatasetError",
    "DegradationSpec", "FaceDataset", "FaceSource", "IRHeader", "ImageFolderSource",
    "IndexedRecordReader", "IndexedRecordWriter", "MissingDataError", "PackSummary",
    "PairedFaceDataset", "RecordIOError", "RecordIOSource", "ResolutionSampler", "TSVSource",
    "UnlabeledFolderSource",
    "classes_path", "decode_image", "find_corrupt", "normalize", "open_source", "pack_record",
    "pack_recordio", "read_class_index", "sample_rng", "synthetic_image", "unpack_record",
    "write_class_index", "write_synthetic_folder",
]
