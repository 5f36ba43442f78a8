"""The LM feature pipeline: item text and image embeddings, LLM-inferred user preferences."""
