"""HTTP layer: Litestar controllers and response schemas."""
