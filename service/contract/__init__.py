"""The gRPC contract's messages in the pipeline's terms, and back: GenerateRequest →
ImageRequest, Answer → GenerateResponse."""
