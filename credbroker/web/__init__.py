"""Browser-facing pages and their static assets: the hosted connect page (``GET /connect``)."""
