"""transformers 4.47.1 ``convert_llama_weights_to_hf.py`` under ``convparity check llama --converter``.

The script's ``main`` first converts ``tokenizer.model`` and takes the vocabulary size from it; the tiny sources have
no tokenizer, so this calls its ``write_model`` with the case's vocabulary size instead, and with the script's own
flags otherwise (``--num_shards``, ``--llama_version``). Everything the weights go through is the script's code.

    convparity check llama --converter "python examples/transformers_4_47/llama.py SCRIPT --input_dir {source}
        --output_dir {output} --num_shards {num_shards} --llama_version {llama_version} --vocab_size {vocab_size}"
"""

from __future__ import annotations

import argparse

from script import load

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("script", help="path to convert_llama_weights_to_hf.py")
parser.add_argument("--input_dir", required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--num_shards", type=int, required=True)
parser.add_argument("--llama_version", required=True)
parser.add_argument("--vocab_size", type=int, required=True)
args = parser.parse_args()
load(args.script).write_model(model_path=args.output_dir, input_base_path=args.input_dir, num_shards=args.num_shards,
                              llama_version=args.llama_version, vocab_size=args.vocab_size, safe_serialization=True)
