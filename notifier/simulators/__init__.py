"""Local stand-ins for external providers (SMTP relay, SMS and Zalo gateways) used by
the demo, the tests and the benchmarks. Nothing here is imported by the service itself."""
