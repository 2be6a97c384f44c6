"""The HTTP API: app factory, routers, authentication and problem+json errors. Endpoints are thin: they
parse, authorize, call a service inside a unit of work and render the result."""
