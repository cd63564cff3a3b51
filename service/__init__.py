"""AIGNE Hub image service: ImageService.Generate over gRPC and REST (through Envoy)."""
