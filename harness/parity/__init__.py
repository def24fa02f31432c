"""The parity layer: does the converted model compute what the reference computes?

``metrics`` (tolerances per dtype), ``precision`` (the reference's own noise floor), ``parity`` (load with
``from_pretrained``, run both sides), ``check`` (round trips of the tiny cases), ``snapshot`` (golden hashes),
``verify`` and ``streamed_model`` (real checkpoints, a block or two in memory at a time; ``checkpoint_files``,
``background`` and ``verify_devices`` under them), ``report``,
``html_report`` (with ``html_model``, ``html_check``, ``html_plot``) and ``card`` (what a run leaves behind).
A family author uses none of it directly: the tests, the CLI and the pytest plugin apply it to every family.
Imports ``family``, ``mapping`` and ``io`` below it.
"""
