"""What vLLM gives a request that leaves ``max_tokens`` out: our default, without capping longer requests.

vLLM 0.32 treats ``max_new_tokens`` in ``--override-generation-config`` as a
cap on every request, but the one in the generation_config.json it loads as
the default for requests that leave ``max_tokens`` out. So the command points
``--hf-config-path`` at a copy of the model's two config files with our default
added. tests_vllm/ proves the effect against a running vLLM.
"""

from __future__ import annotations

import json

from helpers.config import Settings
from helpers.vllm_server import generation_defaults_dir, vllm_command, write_generation_defaults


def test_the_folder_holds_the_models_configs_plus_our_default(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    config = {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "text_config": {"max_position_embeddings": 8192},
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "generation_config.json").write_text(
        json.dumps({"top_k": 20, "eos_token_id": [151645, 151643]})
    )
    settings = Settings.from_env({}, model="demo", port=7123, default_max_new_tokens=300)
    folder = write_generation_defaults(
        settings, model_dir, generation_defaults_dir(settings, tmp_path / "run")
    )
    assert folder == tmp_path / "run" / "vllm-config-7123"
    assert json.loads((folder / "config.json").read_text()) == config
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation == {"top_k": 20, "eos_token_id": [151645, 151643], "max_new_tokens": 300}
    command = vllm_command(settings, "py", model_dir, cpu=True, run_dir=tmp_path / "run")
    assert command[command.index("--hf-config-path") + 1] == str(folder)
    assert "max_new_tokens" not in command[command.index("--override-generation-config") + 1]


def test_a_model_without_a_generation_config_still_gets_the_default(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    settings = Settings.from_env({}, model="demo")
    folder = write_generation_defaults(settings, tmp_path, tmp_path / "out")
    assert json.loads((folder / "generation_config.json").read_text()) == {
        "max_new_tokens": settings.default_max_new_tokens
    }
