"""micropie.http: requests, bodies, multipart, streaming, bad input, end to end."""
