"""Readers (and a writer) for the field's verification and identification protocol files."""

from .bin import VerificationBin, decode_image, parse_bin, read_bin, write_bin
from ._common import require_images
from .ijb_meta import (IJBMeta, read_1n_csv, read_ijb_meta, read_landmarks, read_template_media,
                       read_template_pairs)
from .lists import (IdentityList, list_image_folder, read_identity_tsv,
                    read_survface_identification, read_survface_mat)
from .pairs import PairList, read_lfw_pairs, read_pair_list, read_pairs_tsv

__all__ = [
    "VerificationBin", "decode_image", "parse_bin", "read_bin", "write_bin", "require_images",
    "IJBMeta", "read_1n_csv", "read_ijb_meta", "read_landmarks", "read_template_media",
    "read_template_pairs", "IdentityList", "list_image_folder", "read_identity_tsv",
    "read_survface_identification", "read_survface_mat", "PairList", "read_lfw_pairs",
    "read_pair_list", "read_pairs_tsv",
]
