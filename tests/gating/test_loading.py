"""`load_model` resolves default / .gguf / directory / hub id offline, and refuses bad input clearly."""

from __future__ import annotations

import pytest

from dynasparse_worker.errors import UserError
from dynasparse_worker.models import load_model
from dynasparse_worker.models.fingerprint import model_fingerprint


def test_unknown_hub_id_offline_is_a_user_error_that_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="pass 'default'"):
        load_model("no-such-org/no-such-model-xyz")


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(UserError, match="not a model"):
        load_model(str(junk))


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a model"):
        load_model(str(tmp_path))


def test_a_fake_gguf_file_is_refused_and_leaves_no_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNASPARSE_CACHE_DIR", str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="GGUF"):
        load_model(str(fake))
    models = tmp_path / "cache" / "models"
    assert not any(p.name.startswith("model-") for p in models.iterdir()) if models.exists() else True


def test_a_missing_gguf_path_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))


def test_a_saved_model_directory_loads_through_from_pretrained(tmp_path, make_tiny, default_model):
    model = make_tiny("llama", vocab_size=default_model.tokenizer.vocab_size)
    model.save_pretrained(tmp_path)
    default_model.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.fingerprint == model_fingerprint(model)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"


@pytest.mark.slow
def test_default_model_is_the_cached_smollm2_and_answers_paris(default_model):
    assert default_model.name == "SmolLM2-135M-Instruct"
    assert (default_model.path / "model.safetensors").is_file()
    tokenizer, model = default_model.tokenizer, default_model.model
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
    assert load_model("default").fingerprint == default_model.fingerprint  # cache reused, stable
