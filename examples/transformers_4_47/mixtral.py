"""transformers 4.47.1 ``convert_mixtral_weights_to_hf.py`` under ``convparity check mixtral --converter``.

The script reads params.json in transformers' field names (``hidden_size``, ``num_hidden_layers``, ...), where
Mistral's release writes its own (``dim``, ``n_layers``, ...). This renames the fields, and nothing else (a field the
source leaves out stays out, so the script's own defaults apply), into a copy of the source folder whose weight files
are links to the originals, then runs the script's ``write_model`` on it.

    convparity check mixtral --converter "python examples/transformers_4_47/mixtral.py SCRIPT --input_dir {source}
        --output_dir {output}"
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from script import load

# Mistral's params.json name -> the name the script reads
RENAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
           "n_kv_heads": "num_key_value_heads", "hidden_dim": "intermediate_size", "norm_eps": "rms_norm_eps"}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("script", help="path to convert_mixtral_weights_to_hf.py")
parser.add_argument("--input_dir", required=True)
parser.add_argument("--output_dir", required=True)
args = parser.parse_args()
source = Path(args.input_dir)
params = json.loads((source / "params.json").read_text())
renamed = {RENAMES.get(k, k): v for k, v in params.items()}
if "moe" in params:
    renamed["num_local_experts"] = params["moe"]["num_experts"]
with tempfile.TemporaryDirectory() as d:
    for f in source.iterdir():
        if f.name != "params.json":
            (Path(d) / f.name).symlink_to(f.resolve())
    (Path(d) / "params.json").write_text(json.dumps(renamed))
    load(args.script).write_model(model_path=args.output_dir, input_base_path=d, model_size="7B",
                                  safe_serialization=True)
