"""Rollout engines: the vLLM engine (vllm_engine), its Hugging Face stand-in (hf_engine), the Sample both return
(sample), and the choice between them (engines.rollout_engine_class)."""
