/* The workload benchmarks/engine_vs_simgrid.py exports from fabricsim, run on SimGrid's plain max-min network model
 * ("raw": CM02 with no correction factors, no TCP window, no cross traffic), so the same flows on the same resources
 * are timed by both engines and their finish times compared.
 *
 * Input (whitespace separated): H, then H host names; L, then L link capacities (bytes/s); P, then P routes as
 * `src dst latency_s k link...` (a link listed twice carries a flow twice: a coefficient of 2); N, then N transfers
 * as `route bytes pred` (pred: the transfer it starts after, -1 for none).
 * Output (the file OUTPUT): the wall time of Engine::run in seconds, then each transfer's finish time, one a line.
 *
 * No actors: the transfers are activities with dependencies (as SimGrid's DAG examples run them), so the time is the
 * engine's (max-min solve, event queue, activity bookkeeping), not context switches. A route's latency is that of a
 * private FATPIPE link (bandwidth far above every real one): a comm waits its route's latency before its bytes flow,
 * as fabricsim's transfers do. */
#include <simgrid/s4u.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace sg4 = simgrid::s4u;

int main(int argc, char* argv[])
{
  sg4::Engine e(&argc, argv);  // takes the --cfg=... arguments out of argv
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s INPUT OUTPUT [--cfg=...]\n", argv[0]);
    return 2;
  }
  std::ifstream in(argv[1]);
  auto* zone = e.get_netzone_root()->add_netzone_full("fabric");
  size_t nh;
  in >> nh;
  std::vector<sg4::Host*> hosts(nh);
  for (auto& h : hosts) {
    std::string name;
    in >> name;
    h = zone->add_host(name, 1e9);
  }
  size_t nl;
  in >> nl;
  std::vector<const sg4::Link*> links(nl);
  for (size_t i = 0; i < nl; i++) {
    double bw;
    in >> bw;
    links[i] = zone->add_link("r" + std::to_string(i), bw)->set_latency(0)->seal();
  }
  size_t np;
  in >> np;
  std::vector<std::pair<sg4::Host*, sg4::Host*>> pairs(np);
  for (size_t p = 0; p < np; p++) {
    size_t src, dst, k;
    double latency;
    in >> src >> dst >> latency >> k;
    std::vector<sg4::LinkInRoute> route;
    for (size_t j = 0; j < k; j++) {
      size_t l;
      in >> l;
      route.emplace_back(links[l]);
    }
    route.emplace_back(zone->add_link("lat" + std::to_string(p), 1e300)
                           ->set_latency(latency)
                           ->set_sharing_policy(sg4::Link::SharingPolicy::FATPIPE)
                           ->seal());
    zone->add_route(hosts[src], hosts[dst], route, false);
    pairs[p] = {hosts[src], hosts[dst]};
  }
  zone->seal();
  size_t n;
  in >> n;
  std::vector<sg4::CommPtr> comms(n);
  for (size_t i = 0; i < n; i++) {
    size_t route;
    double bytes;
    long pred;
    in >> route >> bytes >> pred;
    comms[i] = sg4::Comm::sendto_init(pairs[route].first, pairs[route].second);
    comms[i]->set_payload_size(static_cast<uint64_t>(bytes));
    if (pred >= 0)
      comms[pred]->add_successor(comms[i]);
  }
  if (!in) {
    std::fprintf(stderr, "%s: malformed input\n", argv[1]);
    return 2;
  }
  for (auto& c : comms)
    c->start();  // one with a predecessor waits for it (vetoed until its dependencies are solved)
  auto t0 = std::chrono::steady_clock::now();
  e.run();
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  FILE* out = std::fopen(argv[2], "w");
  std::fprintf(out, "%.17g\n", wall);
  for (auto const& c : comms)
    std::fprintf(out, "%.17g\n", c->get_finish_time());
  std::fclose(out);
  return 0;
}
