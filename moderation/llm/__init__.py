"""Access to the OpenAI-compatible LLM endpoint (vLLM in production, llama.cpp locally)."""
