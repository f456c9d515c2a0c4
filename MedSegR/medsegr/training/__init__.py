"""Fine-tuning MedSegR: LoRA on the LLM, the projectors and the mask decoder."""
