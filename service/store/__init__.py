"""Where generated images are kept, and the signed URLs that serve them."""
