"""Export for TF Serving: SavedModels in ``<base>/<name>/<version>/`` layout, warm-up records, manifests,
a models.config, ScaNN searcher artefacts, fresh-process verification and REST ``:predict`` conversion."""
from semrec.export.artefacts import (export_brute_force_retrieval, export_candidate_tower, export_query_tower,
                                     export_retrieval, export_scann_retrieval, export_scann_searcher,
                                     export_sid_assigner)
from semrec.export.fresh_process import FORBIDDEN_MODULES, ServingError, score_in_fresh_process
from semrec.export.ranker import export_ranker
from semrec.export.cascade import CascadeServer, export_cascade, replay_recorded_requests
from semrec.export.generative import export_generative_retriever, export_next_item_table
from semrec.export.rest import (ParsedPredictRequest, PredictRequestError, outputs_to_predict_response,
                                predict_request_to_inputs, rest_predict, signature_input_specs)
from semrec.export.models_config import (discover_models, read_models_config, write_models_config,
                                         write_serving_configs)
from semrec.export.serving_layout import (ExportError, build_manifest, file_inventory, latest_version,
                                          library_versions, list_versions, next_version_dir, publish_staging_dir,
                                          read_expected_outputs, read_manifest, read_warmup_requests, staging_dir,
                                          write_expected_outputs, write_warmup_requests)
from semrec.export.serving_module import (ExportResult, KerasServingModule, ServingModule, check_serving_inputs,
                                          export_keras_module, export_serving_module, flatten_features,
                                          input_specs_from_examples, refused_request_message, unflatten_features)
from semrec.export.verify import (ModelCheck, VerifyReport, report_markdown_table, verification_table, verify_export,
                                  verify_model_version)

__all__ = [
    "CascadeServer", "export_cascade", "replay_recorded_requests",
    "export_brute_force_retrieval", "export_candidate_tower", "export_query_tower", "export_ranker",
    "export_generative_retriever", "export_next_item_table",
    "export_retrieval", "export_scann_retrieval", "export_scann_searcher", "export_sid_assigner",
    "write_serving_configs", "ParsedPredictRequest", "PredictRequestError", "outputs_to_predict_response",
    "predict_request_to_inputs", "rest_predict", "signature_input_specs", "ExportError", "build_manifest",
    "discover_models", "file_inventory", "latest_version", "library_versions", "list_versions", "next_version_dir",
    "publish_staging_dir", "read_expected_outputs", "read_manifest", "read_models_config", "read_warmup_requests",
    "staging_dir", "write_expected_outputs", "write_models_config", "write_warmup_requests", "ExportResult",
    "KerasServingModule", "ServingModule", "check_serving_inputs", "refused_request_message", "export_keras_module", "export_serving_module", "flatten_features",
    "input_specs_from_examples", "unflatten_features", "ModelCheck", "VerifyReport", "report_markdown_table", "verification_table",
    "verify_export", "verify_model_version", "FORBIDDEN_MODULES", "ServingError", "score_in_fresh_process",
]
