"""How this folder was produced: every map scored on a snapshot of the study's fit (read-only), val and test.

    PYTHONPATH=. python docs/localization/fine_epoch1/how_produced.py RUN_SNAPSHOT OUT_DIR

RUN_SNAPSHOT: a folder with the study run's run.json and model_best.safetensors (its cache path is absolute).
"""

import json
import sys
import time
from pathlib import Path

from Training.localize import localize_cases, write_cases_csv, write_montage
from Training.study import StudyConfig, _json, _map_lines, study_summary, true_positives, validation_choice

run, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
t0 = time.time()
val, _ = localize_cases(run, "val", device="cpu", montage_cases=0)
v = validation_choice(true_positives(val))
print(json.dumps({k: v[k] for k in ("n", "best", "best_any", "default")}), f"{time.time() - t0:.0f} s", flush=True)
for n, r in sorted(v["candidates"].items(), key=lambda kv: kv[1]["mean_mm"]):
    print(f"  val {n:28s} {r['mean_mm']:7.1f} mm  hits {r['hits']}", flush=True)
test, shown = localize_cases(run, "test", device="cpu", only_called=False)
summary = study_summary(StudyConfig(), [r for r in test if r.called_malignant], v)
(out / "summary.json").write_text(_json(summary))
write_cases_csv(out / "cases.csv", test)
write_cases_csv(out / "val_cases.csv", val)
write_montage(out / "montage.png", shown)
(out / "table.md").write_text("\n".join(_map_lines(summary)) + "\n")
print("\n".join(_map_lines(summary)))
print(f"total {time.time() - t0:.0f} s")
