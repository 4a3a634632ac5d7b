"""Evaluation protocols of the field on embeddings: 1:1 verification, 1:N open-set
identification, IJB templates, resolution gains, readers for the protocol files, tables and
plots.

Everything here works on embeddings (numpy arrays) and files, so any model can be scored;
see :mod:`.verification`, :mod:`.identification` and :mod:`.ijb` for the exact protocols.
"""

from .align import (
    ARCFACE_TEMPLATE_112, align_face, arcface_template, landmarks_68_to_5, similarity_transform,
)
from .embeddings import as_embeddings, flip_tta, l2_normalize
from .errors import EmbeddingError, ProtocolFileError
from .gains import GainWarning, cross_resolution_gain, same_resolution_gain
from .identification import (
    DEFAULT_CMC_RANKS, DEFAULT_FPIRS, MODES, Gallery, IdentificationResult, OpenSetResult,
    ProbeScores, build_gallery, cmc, evaluate_identification, iter_score_blocks, mate_indices,
    open_set_identification, score_probes, summarise_scores,
)
from .ijb import (
    IJB_FARS, IJB_FPIRS, IJBIdentificationResult, IJBVerificationResult, ijb_identification,
    ijb_verification, image_features, template_features, template_pair_scores, template_subjects,
)
from .readers import (
    IdentityList, IJBMeta, PairList, VerificationBin, decode_image, list_image_folder, parse_bin,
    read_1n_csv, read_bin, read_identity_tsv, read_ijb_meta, read_landmarks, read_lfw_pairs,
    read_pair_list, read_pairs_tsv, read_survface_identification, read_survface_mat, read_template_media,
    read_template_pairs, require_images, write_bin,
)
from .report import (
    identification_row, ijb_row, markdown_table, pivot, plot_accuracy_vs_resolution, plot_roc,
    plot_tpir_fpir, verification_row, write_table,
)
from .roc import FAR_RULES, RocCurve, roc_curve, tar_at_far
from .safe_pickle import RestrictedUnpickler, safe_loads
from .settings import ResolutionSetting, parse_setting, parse_settings
from .verification import (
    DEFAULT_FARS, DEFAULT_THRESHOLDS, VerificationResult, accuracies, contiguous_folds,
    evaluate_verification, kfold_accuracy, pair_distances,
)

__all__ = [
    # embeddings and errors
    "as_embeddings", "flip_tta", "l2_normalize", "EmbeddingError", "ProtocolFileError",
    # 1:1 verification
    "DEFAULT_FARS", "DEFAULT_THRESHOLDS", "VerificationResult", "accuracies", "contiguous_folds",
    "evaluate_verification", "kfold_accuracy", "pair_distances",
    "FAR_RULES", "RocCurve", "roc_curve", "tar_at_far",
    "ResolutionSetting", "parse_setting", "parse_settings",
    "GainWarning", "cross_resolution_gain", "same_resolution_gain",
    # 1:N identification
    "DEFAULT_CMC_RANKS", "DEFAULT_FPIRS", "MODES", "Gallery", "IdentificationResult",
    "OpenSetResult", "ProbeScores", "build_gallery", "cmc", "evaluate_identification",
    "iter_score_blocks", "mate_indices", "open_set_identification", "score_probes",
    "summarise_scores",
    # IJB
    "IJB_FARS", "IJB_FPIRS", "IJBIdentificationResult", "IJBVerificationResult",
    "ijb_identification", "ijb_verification", "image_features", "template_features",
    "template_pair_scores", "template_subjects",
    "ARCFACE_TEMPLATE_112", "align_face", "arcface_template", "landmarks_68_to_5",
    "similarity_transform",
    # readers
    "IdentityList", "IJBMeta", "PairList", "VerificationBin", "decode_image",
    "list_image_folder", "parse_bin", "read_1n_csv", "read_bin", "read_identity_tsv",
    "read_ijb_meta", "read_landmarks", "read_lfw_pairs", "read_pair_list", "read_pairs_tsv",
    "read_survface_identification", "read_survface_mat", "read_template_media",
    "read_template_pairs", "require_images", "write_bin", "RestrictedUnpickler", "safe_loads",
    # output
    "identification_row", "ijb_row", "markdown_table", "pivot", "plot_accuracy_vs_resolution",
    "plot_roc", "plot_tpir_fpir", "verification_row", "write_table",
]
