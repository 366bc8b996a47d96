"""stablecog-gateway: a gRPC gateway to Stablecog's image generation REST API."""
