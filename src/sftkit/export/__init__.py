"""Export: GGUF, Ollama Modelfile, a complete Hugging Face directory, the Hub."""
