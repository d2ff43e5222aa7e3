// Curator recipe contenders driven over stdin, for lock-zk's interop tests.
//
// Usage: java CuratorRecipes CONNECT_STRING PATH RECIPE [ARG]
//   semaphore N   InterProcessSemaphoreV2 with N leases: "acquire MILLIS" (HELD or BUSY; one
//                 process may hold several leases), "release" (returns the oldest lease it
//                 holds: RELEASED)
//   read | write  InterProcessReadWriteLock's read or write lock: "acquire MILLIS" (HELD or
//                 BUSY), "release" (RELEASED)
//   latch ID      LeaderLatch with participant id ID: "start" (STARTED), "await MILLIS" (LEADER
//                 or NOT_LEADER), "has" (LEADER or NOT_LEADER, now), "leader" (LEADER_IS <the
//                 leader's id, its node's data> or NONE), "close" (CLOSED)
// "quit" ends the process. Every answer is one line.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.ArrayDeque;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.Participant;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.framework.recipes.locks.InterProcessSemaphoreV2;
import org.apache.curator.framework.recipes.locks.Lease;
import org.apache.curator.retry.ExponentialBackoffRetry;

public class CuratorRecipes {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], 10000, 5000, new ExponentialBackoffRetry(100, 3));
        client.start();
        client.blockUntilConnected(30, TimeUnit.SECONDS);
        String path = args[1];
        String recipe = args[2];
        InterProcessSemaphoreV2 semaphore = null;
        InterProcessMutex mutex = null;
        LeaderLatch latch = null;
        ArrayDeque<Lease> leases = new ArrayDeque<>();
        if (recipe.equals("semaphore")) {
            semaphore = new InterProcessSemaphoreV2(client, path, Integer.parseInt(args[3]));
        } else if (recipe.equals("read")) {
            mutex = new InterProcessReadWriteLock(client, path).readLock();
        } else if (recipe.equals("write")) {
            mutex = new InterProcessReadWriteLock(client, path).writeLock();
        } else if (recipe.equals("latch")) {
            latch = new LeaderLatch(client, path, args[3]);
        } else {
            throw new IllegalArgumentException("unknown recipe " + recipe);
        }
        System.out.println("READY");
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] cmd = line.trim().split(" ");
            String out;
            switch (cmd[0]) {
                case "acquire":
                    long ms = Long.parseLong(cmd[1]);
                    if (semaphore != null) {
                        Lease lease = semaphore.acquire(ms, TimeUnit.MILLISECONDS);
                        if (lease != null) {
                            leases.addLast(lease);
                        }
                        out = lease != null ? "HELD" : "BUSY";
                    } else {
                        out = mutex.acquire(ms, TimeUnit.MILLISECONDS) ? "HELD" : "BUSY";
                    }
                    break;
                case "release":
                    if (semaphore != null) {
                        semaphore.returnLease(leases.removeFirst());
                    } else {
                        mutex.release();
                    }
                    out = "RELEASED";
                    break;
                case "start":
                    latch.start();
                    out = "STARTED";
                    break;
                case "await":
                    out = latch.await(Long.parseLong(cmd[1]), TimeUnit.MILLISECONDS) ? "LEADER" : "NOT_LEADER";
                    break;
                case "has":
                    out = latch.hasLeadership() ? "LEADER" : "NOT_LEADER";
                    break;
                case "leader":
                    Participant p = latch.getLeader();
                    out = p.isLeader() ? "LEADER_IS " + p.getId() : "NONE";
                    break;
                case "close":
                    latch.close();
                    out = "CLOSED";
                    break;
                case "quit":
                    client.close();
                    return;
                default:
                    out = "UNKNOWN " + cmd[0];
            }
            System.out.println(out);
            System.out.flush();
        }
        client.close();
    }
}
