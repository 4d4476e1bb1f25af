"""Server and framework adapters for fastbody, imported as ``fastbody.integrations.*``."""
