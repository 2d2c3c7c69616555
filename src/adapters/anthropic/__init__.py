"""Anthropic Messages API as an LLMAgent."""
