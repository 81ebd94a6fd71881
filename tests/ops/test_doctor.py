import json

from lumina import cli


def test_doctor_reports_versions_and_a_backend_per_op(ext, capsys):
    assert cli.main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["versions"]) >= {"torch", "deepspeed", "megatron-core", "torch CUDA", "nvcc"}
    assert info["extension"]["loaded"] is True
    assert set(info["routing_ops"]) == {"topk_route", "dispatch_plan", "permute", "unpermute",
                                        "expert_histogram", "mod_select", "gather_tokens", "scatter_tokens",
                                        "rms_norm", "rope", "swiglu", "expert_mlp",
                                        "causal_attention", "cross_entropy", "router_losses"}
    assert all(where["cpu"].startswith("C++ kernel") for where in info["routing_ops"].values())
    assert "PyTorch ops (the fused kernels are CPU-only)" in info["routing_ops"]["rms_norm"]["cuda"]
    assert cli.main(["doctor", "--strict"]) == 0
    assert "expert_mlp" in capsys.readouterr().out


def test_doctor_strict_fails_on_the_reference(monkeypatch, capsys):
    monkeypatch.setenv("LUMINA_ROUTING_BACKEND", "reference")
    assert cli.main(["doctor", "--strict"]) == 1
    assert "reference (LUMINA_ROUTING_BACKEND=reference)" in capsys.readouterr().out
