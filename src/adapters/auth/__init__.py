"""Token verifiers: HS256 shared secret and Better Auth JWKS."""
