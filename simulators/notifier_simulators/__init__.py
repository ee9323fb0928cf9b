"""Local stand-ins for external providers (SMTP relay, SMS and Zalo gateways) used by
the demo, the tests and the benchmarks. A dev/test distribution of its own
(``notifier-simulators``): the service never imports it, and the production image
does not hold it."""
