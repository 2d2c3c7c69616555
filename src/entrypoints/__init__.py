"""Entry points: the composition root, the Litestar app and the CLI."""
