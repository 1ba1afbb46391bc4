"""Export a model for other tools: GGUF for llama.cpp / Ollama (`gguf_writer`), the proof that
llama.cpp answers like sftkit (`gguf_verify`), the Ollama Modelfile (`ollama`), the complete
Hugging Face directory (`hf_dir`) and the Hub upload (`hub`)."""
