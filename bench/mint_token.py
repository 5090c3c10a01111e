#!/usr/bin/env python3
"""Mints a benchmark JWKS and a valid RS256 token from a test-only key.

Usage: mint_token.py KEY.pem ISSUER AUDIENCE OUT_JWKS [COUNT] > tokens
Prints COUNT tokens (default 1), one per line, for users bench-user-0..N-1.
Needs the `cryptography` package.
"""
import base64
import json
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def main() -> None:
    key_path, issuer, audience, out_jwks = sys.argv[1:5]
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    numbers = key.public_key().public_numbers()
    jwks = {"keys": [{"kty": "RSA", "kid": "bench-1", "alg": "RS256", "use": "sig",
                      "n": uint(numbers.n), "e": uint(numbers.e)}]}
    with open(out_jwks, "w") as f:
        json.dump(jwks, f)
    now = int(time.time())
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench-1"}).encode())
    for i in range(count):
        claims = {"iss": issuer, "aud": audience, "sub": "bench-user" if count == 1 else f"bench-user-{i}",
                  "azp": "bench", "iat": now, "exp": now + 3600, "groups": ["ai-power-users"],
                  "realm_access": {"roles": ["llm-user"]}, "tenant": "acme"}
        signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        print(f"{signing_input}.{b64(signature)}")

if __name__ == "__main__":
    main()
