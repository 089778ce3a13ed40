"""The 11-dataset few-shot protocol (CLIP-LoRA's): one fine-tuning on a
K-shot train set, evaluated top-1 on the test split (docs/fewshot.md)."""
