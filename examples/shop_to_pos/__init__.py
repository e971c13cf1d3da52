"""Shop to POS: a Shopify-style webhook intake, a queue, and a worker that
delivers customers to a point-of-sale API (see README.md)."""
