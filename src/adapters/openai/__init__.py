"""OpenAI chat completions (and compatible servers) as an LLMAgent."""
