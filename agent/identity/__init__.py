"""Identity: identifiers in, a person (anonymous epoch, derived id or named id) out (SPEC §1)."""
