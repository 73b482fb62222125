"""osutil: the operating-system helpers every ovnet program shares, each defined once.

Owns: atomic file writes (`files`), process identity and liveness (`proc`), entering a network
namespace from a throwaway thread (`netns`), retry delays (`backoff`), HOST:PORT parsing and
formatting (`hostport`), trying a list of peers in turn (`failover`), and a minimal HTTP
endpoint on the event loop for read-only documents such as metrics (`httpexport`).

Standard library only, and nothing is imported here at package import: the task shim imports
`osutil.proc` and `osutil.files` on its start path, which must stay a few milliseconds.
Layering: osutil imports nothing of ovnet; proto, security, manager, agent and ovctl may all
import it (tests/unit/test_layers.py enforces this).
"""
