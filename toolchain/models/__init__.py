"""What a model is and how it is loaded, run and exported: PyTorch modules, Hugging Face
folders, and the models stages derive from them (pruned, distilled). Every stage uses it."""
