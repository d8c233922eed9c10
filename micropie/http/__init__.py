"""HTTP requests and responses: parsing, bodies, uploads, streaming."""
