"""Export a model for other tools: GGUF for llama.cpp / Ollama (`gguf_writer`), the proof that
llama.cpp answers like sftkit (`gguf_verify`), the Ollama Modelfile, the Hugging Face directory
and the Hub upload."""
