"""camflow over HTTP: cameras upload, customers read results, authors manage algorithms."""
