// A Curator InterProcessMutex contender driven over stdin, for lock-zk's interop test.
//
// Usage: java CuratorContender CONNECT_STRING LOCK_PATH
// Commands, one per line: "acquire MILLIS" (prints HELD or BUSY), "release" (prints
// RELEASED), "quit".
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.ExponentialBackoffRetry;

public class CuratorContender {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], 10000, 5000, new ExponentialBackoffRetry(100, 3));
        client.start();
        client.blockUntilConnected(30, TimeUnit.SECONDS);
        InterProcessMutex mutex = new InterProcessMutex(client, args[1]);
        System.out.println("READY");
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] cmd = line.trim().split(" ");
            if (cmd[0].equals("acquire")) {
                boolean got = mutex.acquire(Long.parseLong(cmd[1]), TimeUnit.MILLISECONDS);
                System.out.println(got ? "HELD" : "BUSY");
            } else if (cmd[0].equals("release")) {
                mutex.release();
                System.out.println("RELEASED");
            } else if (cmd[0].equals("quit")) {
                break;
            }
            System.out.flush();
        }
        client.close();
    }
}
