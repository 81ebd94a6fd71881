"""Conversions of whole models: to and from Hugging Face (export, import) and between modes
(sparse upcycling). Everything here works on whole fp32 tensors under LuminaLM's names, as
lumina.train.checkpoint reads and writes them, so no layout enters."""


def require_transformers() -> None:
    """transformers is an optional dependency (the `hf` extra, also in `dev` and `bench`): say so in
    one line instead of an ImportError deep inside a conversion."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"converting to or from Hugging Face needs transformers 5 ({exc}); "
                         "pip install -e '.[hf]'") from None
