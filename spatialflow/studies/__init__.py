"""The paper's studies as functions the notebooks call.

- :mod:`~spatialflow.studies.variants`: the rows of Tables IV, V / VI, VII / VIII, IX / X, XII
  and Fig. 4 as config overrides;
- :mod:`~spatialflow.studies.running`: :func:`run_study` trains every (variant, seed) into its
  own cached run folder; runs of one seed are paired (same data order, augmentation and initial
  weights of every shared part: :mod:`spatialflow.model.seeding`);
- :mod:`~spatialflow.studies.planning`: what a study will cost before it starts, and the
  interval it can reach at the measured noise;
- :mod:`~spatialflow.studies.statistics`: paired differences to the reference with their 95%
  t-intervals and verdicts;
- :mod:`~spatialflow.studies.tables`: per-variant summaries and markdown tables;
- :mod:`~spatialflow.studies.paper`: the paper's figures; :mod:`~spatialflow.studies.speed`:
  Table XI on this machine.
"""

from spatialflow.studies.paper import PAPER
from spatialflow.studies.planning import (PREVIEW, describe_plan, describe_precision,
                                          describe_reached, expected_precision, measured_noise,
                                          plan_study, planned_study, reached_precision)
from spatialflow.studies.running import (config_key, run_label, run_or_data, run_study,
                                         save_rows, slug)
from spatialflow.studies.speed import describe_speed, speed_points, speed_vs_scale, table_xi_scales
from spatialflow.studies.statistics import (compare, describe_comparison, format_comparison,
                                            half_width, paired, pairing_gain, seeds_for,
                                            study_record, t_interval, verdict)
from spatialflow.studies.tables import format_table, group_rows, summarize
from spatialflow.studies.variants import (QUICK_OVERRIDES, Variant, components_variants,
                                          detection_variants, fig4_variants, flows_variants,
                                          lambda_variants, notebook_settings, preview_settings,
                                          stages_variants,
                                          variant)

__all__ = ["PAPER", "PREVIEW", "QUICK_OVERRIDES", "compare", "components_variants", "config_key",
           "describe_comparison", "describe_plan", "describe_precision", "describe_reached",
           "describe_speed", "detection_variants", "expected_precision", "fig4_variants",
           "flows_variants", "format_comparison", "format_table", "group_rows",
           "half_width", "lambda_variants", "measured_noise", "notebook_settings", "paired",
           "pairing_gain", "plan_study", "planned_study", "preview_settings", "reached_precision",
           "run_label", "run_or_data", "run_study", "save_rows", "seeds_for", "slug",
           "speed_points", "speed_vs_scale", "stages_variants", "study_record", "summarize",
           "t_interval", "table_xi_scales", "Variant", "variant", "verdict"]
