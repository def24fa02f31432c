"""transformers 4.47.1 ``convert_gemma_weights_to_hf.py`` under ``convparity check gemma --converter``.

The script takes gemma_pytorch's size names in upper case (``--model_size 2B|7B``) where the family's fact is
gemma_pytorch's own (``{variant}``: 2b, 7b, 7b-quant); this passes it on and runs the script's ``main``. The script
has no other way to learn a model's shape: with ``--config {source}/config.json`` its hard-coded preset is replaced
by a ``GemmaConfig`` of the case's own sizes, so the weights go through the script whatever the size.

    convparity check gemma --converter "python examples/transformers_4_47/gemma.py SCRIPT --input_checkpoint
        {source}/model.ckpt --variant {variant} --output_dir {output} [--config {source}/config.json]"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from script import load

# gemma_pytorch config.json field -> GemmaConfig argument
FIELDS = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size", "head_dim": "head_dim",
          "num_hidden_layers": "num_hidden_layers", "num_attention_heads": "num_attention_heads",
          "num_key_value_heads": "num_key_value_heads", "vocab_size": "vocab_size", "rms_norm_eps": "rms_norm_eps",
          "max_position_embeddings": "max_position_embeddings"}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("script", help="path to convert_gemma_weights_to_hf.py")
parser.add_argument("--input_checkpoint", required=True)
parser.add_argument("--variant", required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--config", help="gemma_pytorch config.json: use its sizes instead of the script's preset")
args = parser.parse_args()
script = load(args.script)
size = args.variant.split("-")[0].upper()
if args.config:
    config = json.loads(Path(args.config).read_text())
    script.CONFIG_MAPPING[size] = script.GemmaConfig(**{FIELDS[k]: v for k, v in config.items() if k in FIELDS})
sys.argv = [args.script, "--input_checkpoint", args.input_checkpoint, "--model_size", size, "--output_dir",
            args.output_dir]
script.main()
