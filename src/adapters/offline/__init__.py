"""The offline agent: a deterministic todo parser that needs no network and no key."""
